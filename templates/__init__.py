"""Material templates and levels of theory shipped as package data."""
