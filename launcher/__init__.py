"""The launcher: starts worker agent CLIs against the aiswarm broker and supervises them; installs aiswarm into primary agents."""
