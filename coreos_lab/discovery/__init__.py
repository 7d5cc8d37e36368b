"""The local etcd v2 discovery service (docs/field-notes.md §5): state on disk, the HTTP protocol, and the token
client.

`store` holds tokens and their keys with etcd's index semantics; `api` serves them on the mirror's aiohttp
app; `client` is what commands call to get or inspect a token. Nothing heavy is imported here.
"""
