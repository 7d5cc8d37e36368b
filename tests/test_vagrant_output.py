"""Parsing Vagrant's machine-readable output, on outputs recorded from the real Vagrant 2.3.4."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.errors import ExitCode, ToolMissing
from coreos_lab.vagrant.adapter import (
    ENCODED_COMMA,
    PROVIDER_ERRORS,
    VagrantFailed,
    decode,
    error_from_output,
    parse_box_list,
    parse_line,
    parse_machine_readable,
    parse_status,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vagrant"


def recorded(name: str) -> tuple[str, int]:
    return (FIXTURES / f"{name}.stdout").read_text(), int((FIXTURES / f"{name}.rc").read_text())


def test_decode_restores_commas_and_newlines() -> None:
    assert decode("a%!(VAGRANT_COMMA) b\\nc") == "a, b\nc"


def test_status_lists_every_machine_not_created_in_vagrantfile_order() -> None:
    text, rc = recorded("status-not-created")
    assert rc == 0
    statuses = parse_status(parse_machine_readable(text))
    assert [s.name for s in statuses] == ["core-01", "core-02", "core-03"]
    assert {s.state for s in statuses} == {"not_created"}
    assert {s.provider for s in statuses} == {"libvirt"}
    assert statuses[0].description == "not created"
    assert not statuses[0].created


def test_ui_text_is_decoded() -> None:
    text, _ = recorded("status-not-created")
    summary = [line for line in parse_machine_readable(text) if line.kind == "ui"][-1]
    assert "core-01                   not created (libvirt)" in summary.text
    assert "For more information about a specific\nVM, run `vagrant status NAME`." in summary.text


def test_provider_not_usable_becomes_tool_missing_naming_virtualbox() -> None:
    text, rc = recorded("status-virtualbox-missing")
    assert rc == 1
    error = error_from_output(["vagrant", "status"], rc, text, provider="virtualbox", log_path=None)
    assert isinstance(error, ToolMissing)
    assert error.exit_code == ExitCode.MISSING_TOOL
    assert error.message.startswith("Vagrant cannot use provider virtualbox: Vagrant could not detect VirtualBox!")
    assert "\n" not in error.message
    assert error.hint and "VBoxManage" in error.hint


def test_failed_ssh_config_is_not_swallowed() -> None:
    text, rc = recorded("ssh-config-not-created")
    assert rc == 1
    error = error_from_output(["vagrant", "ssh-config", "core-01"], rc, text, provider="virtualbox", log_path=None)
    assert isinstance(error, ToolMissing)


def test_other_error_exit_names_class_command_and_log(tmp_path: Path) -> None:
    text, rc = recorded("destroy-libvirt-down")
    log = tmp_path / "destroy.log"
    error = error_from_output(["vagrant", "destroy", "--force"], rc, text, provider="libvirt", log_path=log)
    assert isinstance(error, VagrantFailed)
    assert error.error_class == "VagrantPlugins::ProviderLibvirt::Errors::FogLibvirtConnectionError"
    assert error.message.startswith("vagrant destroy failed (FogLibvirtConnectionError): Error while connecting")
    assert "libvirt-sock': No such file or directory" in error.message
    assert str(log) in error.message


def test_failure_without_error_exit_quotes_the_tail() -> None:
    output = "\n".join(f"1700000000,core-01,ui,info,step {i}" for i in range(40)) + "\nplain stderr line\n"
    error = error_from_output(["vagrant", "up", "core-01"], 1, output, provider="virtualbox", log_path=None)
    assert isinstance(error, VagrantFailed)
    assert "vagrant up core-01 failed (exit 1)" in error.message
    assert "plain stderr line" in error.message and "step 39" in error.message
    assert "step 10" not in error.message  # only the tail


def test_box_list() -> None:
    text, rc = recorded("box-list")
    assert rc == 0
    boxes = parse_box_list(parse_machine_readable(text))
    assert [(b.name, b.provider, b.version) for b in boxes] == [("coreos-stable", "virtualbox", "0")]


def test_non_machine_lines_are_skipped() -> None:
    assert parse_line("/usr/lib/ruby/warning: something, with commas") is None
    assert parse_line("") is None
    line = parse_line("1700000000,,error-exit,Vagrant::Errors::X,msg%!(VAGRANT_COMMA) more")
    assert line is not None and line.data == ("Vagrant::Errors::X", "msg, more")


def _encode(field: str) -> str:
    return field.replace(",", ENCODED_COMMA).replace("\n", "\\n")


_RECORD = st.tuples(
    st.sampled_from(["core-01", "core-02", "", "a,b"]),  # target
    st.sampled_from(["state", "provider-name", "state-human-short", "ui", "metadata", "error-exit", "box-name"]),
    st.sampled_from(
        ["running", "poweroff", "not_created", "", "a,b", "two\nlines", "Vagrant::Errors::ProviderNotUsable",
         "Vagrant::Errors::SSHNotReady", "VagrantPlugins::ProviderLibvirt::Errors::FogLibvirtConnectionError"]
    ),
)  # fmt: skip
# Anything else Vagrant, Ruby or a plugin prints: never a machine-readable line, whatever it contains.
_NOISE = st.text(max_size=60).filter(lambda t: not any(re.match(r"\d+,", part) for part in t.splitlines()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_RECORD, _NOISE), max_size=15), st.sampled_from(["\n", "\r\n"]))
def test_only_what_vagrant_said_is_reported(lines: list[tuple[str, str, str] | str], newline: str) -> None:
    """A machine, its state and its provider are reported only as Vagrant's lines say (the last line of a kind
    wins; no state line: "unknown", never "running"), and a failure is blamed on the error Vagrant named last."""
    text = newline.join(
        line if isinstance(line, str) else f"1700000000,{_encode(line[0])},{line[1]},{_encode(line[2])}"
        for line in lines
    )
    records = [line for line in lines if not isinstance(line, str)]
    said: dict[str, dict[str, str]] = {}
    for target, kind, value in records:
        if target and kind in ("state", "provider-name", "state-human-short"):
            said.setdefault(target, {})[kind] = value
    statuses = parse_status(parse_machine_readable(text))
    assert [s.name for s in statuses] == list(said)
    for status in statuses:
        assert status.state == said[status.name].get("state", "unknown")
        assert status.running == (said[status.name].get("state") == "running")
        assert status.provider == said[status.name].get("provider-name")

    error = error_from_output(["vagrant", "up"], 1, text, provider=None, log_path=None)
    named = [value for _, kind, value in records if kind == "error-exit"]
    if named and named[-1].rsplit("::", 1)[-1] in PROVIDER_ERRORS:
        assert isinstance(error, ToolMissing)
    else:
        assert isinstance(error, VagrantFailed) and error.error_class == (named[-1] if named else None)


@pytest.mark.parametrize("target", ["", "core-01", "a%!(VAGRANT_COMMA)b"])
def test_round_trip_of_encoded_fields(target: str) -> None:
    line = parse_line(f"1,{target},state,running")
    assert line is not None and line.target == decode(target) and line.data == ("running",)
