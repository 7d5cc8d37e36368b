"""Vagrant: the one CLI adapter (`adapter`), the provider table (`providers`) and each provider's own facts
and doctor checks (`virtualbox`, `libvirt`)."""
