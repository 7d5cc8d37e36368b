"""The distro table and the provider table are the one source of their facts: the CLI's choices, the settings'
choices and the templates follow them, and no other module spells the facts out."""

from __future__ import annotations

import ast
import ipaddress
import re
from pathlib import Path

import click
import pytest

from coreos_lab.cli import cli
from coreos_lab.cli.commands import walk
from coreos_lab.distros import DISTRO_NAMES, DISTROS, distro_named
from coreos_lab.errors import BadInput
from coreos_lab.lab.settings import SETTINGS_BY_PATH
from coreos_lab.mirror.images.reference import parse_reference
from coreos_lab.paths import templates_dir
from coreos_lab.vagrant.providers import DEFAULT_PROVIDER, PROVIDER_NAMES, PROVIDERS

PACKAGE = Path(__file__).resolve().parents[1] / "coreos_lab"


def test_every_distro_option_offers_the_tables_names() -> None:
    found = {
        where: tuple(param.type.choices)
        for where, command in walk(cli)
        for param in command.params
        if "--distro" in getattr(param, "opts", ()) and isinstance(param.type, click.Choice)
    }
    assert {"lab init", "lab render", "lab config", "lab health", "lab smoke", "lab mirror fetch"} <= set(found)
    assert all(choices == DISTRO_NAMES for choices in found.values()), found


def test_settings_choices_are_the_tables_names() -> None:
    assert SETTINGS_BY_PATH["distro"].choices == DISTRO_NAMES
    assert SETTINGS_BY_PATH["provider"].choices == PROVIDER_NAMES
    assert SETTINGS_BY_PATH["provider"].default == DEFAULT_PROVIDER in PROVIDERS


@pytest.mark.parametrize("name", DISTRO_NAMES)
def test_every_distro_is_complete(name: str) -> None:
    distro = DISTROS[name]
    assert distro.name == name and distro_named(name) is distro
    assert (templates_dir() / distro.template).is_file()
    assert re.fullmatch(r"https://\{channel\}\.release\.[a-z0-9.-]+", distro.release_server)
    assert distro.channels and "stable" in distro.channels
    assert distro.user_data_dir.startswith("/var/lib/")
    assert distro.units[0] == distro.etcd_unit and ("fleet" in distro.units) == distro.fleet
    assert distro.etcd_api in (2, 3)
    assert distro.box_name("stable") == f"{name}-stable"
    if distro.etcd_image is not None:  # etcd from a container image, pinned to a tag the mirror keeps
        assert parse_reference(distro.etcd_image).tag not in (None, "latest")


def test_an_unknown_distro_is_bad_input_naming_the_choices() -> None:
    with pytest.raises(BadInput, match="distro must be one of coreos, flatcar, not 'rhel'"):
        distro_named("rhel")


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_every_provider_is_complete(name: str) -> None:
    provider = PROVIDERS[name]
    assert provider.name == name
    assert (templates_dir() / "providers" / f"{name}.rb.j2").is_file()
    assert provider.checks and provider.install_hint and provider.host_interfaces
    assert provider.up in ("processes", "one-process", "serial")
    ipaddress.ip_address(provider.guest_host())
    assert provider.management_network == (provider.nat_host is None)


def test_management_network_gateway_is_where_libvirt_guests_reach_the_host() -> None:
    assert PROVIDERS["libvirt"].guest_host("10.20.30.0/24") == "10.20.30.1"
    assert PROVIDERS["virtualbox"].guest_host("10.20.30.0/24") == "10.0.2.2"


def test_no_other_module_uses_an_etcd_image_of_its_own() -> None:
    """No string value in the code (prose and examples in messages aside) starts with a distro's etcd image,
    by its upstream name or as the mirror keeps it: a default image comes from the table."""
    images = [parse_reference(d.etcd_image) for d in DISTROS.values() if d.etcd_image]
    facts = tuple(f"{i.registry}/{i.repository}" for i in images) + tuple(i.repository for i in images)
    offenders = [
        f"{path.relative_to(PACKAGE)}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "distros.py"
        for value in _string_values(path)
        if value.startswith(facts)
    ]
    assert offenders == []


def _string_values(path: Path) -> list[str]:
    """The string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, documented) and node.body and isinstance(node.body[0], ast.Expr)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_other_module_spells_out_a_release_server_or_a_user_data_directory() -> None:
    facts = [d.release_server.split("}.", 1)[1] for d in DISTROS.values()]
    facts += [d.user_data_dir for d in DISTROS.values()]
    offenders = [
        f"{path.relative_to(PACKAGE)}: {fact}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "distros.py"
        for fact in facts
        if fact in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
