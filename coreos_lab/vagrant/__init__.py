"""Vagrant: the one CLI adapter (`adapter`) and the providers' facts (`libvirt`, …)."""
