"""The commands, thin: each reads its settings, checks them, and calls the library (translate/__main__.py lists
them).  Nothing in the library imports from here."""
