"""Integrations with other agent frameworks, each an optional extra.

Nothing is imported here: ``import tether`` never imports a framework. Import the
integration itself, for example ``tether.integrations.pydantic_ai`` (extra
``tether[pydantic-ai]``).
"""
