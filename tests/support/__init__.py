"""Helpers the tests share: running `mer` as a shell would, fake reasoning servers on 127.0.0.1,
fake plug-in distributions, small synthetic training workspaces, and small media files."""
