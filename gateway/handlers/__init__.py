"""Local endpoints; registry.py names them by the handler name routes.yaml uses."""
