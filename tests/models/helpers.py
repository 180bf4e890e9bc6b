"""A sibling module the factories import (as a user's project would)."""

DIM = 16
CLASSES = 2
