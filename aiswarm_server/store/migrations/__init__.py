"""Numbered schema migrations, one folder per dialect (``0001_initial.sql`` ...), applied at start-up."""
