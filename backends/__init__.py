"""Backends: one module per family, each registered under the `harness.backends` entry points."""
