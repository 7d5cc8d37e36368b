"""Container images in the mirror: references, manifests, the OCI-layout store, fetch, import and the registry."""
