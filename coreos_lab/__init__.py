"""coreos-lab: multi-node CoreOS / Flatcar cluster labs on Vagrant, offline."""

__version__ = "0.1.0"
