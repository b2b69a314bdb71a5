"""Thin kopf handler bodies; the decorators live in lamina_operator.main."""
