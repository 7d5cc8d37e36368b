"""Shared test helpers: real peers (servers, processes, namespaces) started and cleaned up by PID."""
