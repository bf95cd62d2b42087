"""The Pulumi program's building blocks: settings, one ComponentResource per concern."""
