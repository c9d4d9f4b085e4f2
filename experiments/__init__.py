"""Measurements behind the project's choices: speed and face quality."""
