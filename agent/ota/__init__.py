"""Over-the-air model updates.

A release is a folder on any static HTTPS host: the model (and optional variants, labels and a reference
input/output pair) beside a signed ``manifest.json`` that lists every file with its size and sha256.
The agent polls the manifest (or is told of it over MQTT), checks its Ed25519 signatures against the
configured keys before reading anything else, refuses expired releases and downgrades, downloads the files
with resume, installs them crash-safely beside the running version, tries the new model as a canary
and keeps it or rolls back. ``manifest`` is the format, ``release`` the publisher's side, ``fetch`` the
downloads and ``store`` the versions on disk.
"""
