"""Lamina operator: ServingDeployment/AutoscalingPolicy CRDs, pure builders, a kopf reconciler.

Layering: never imports torch or lamina_engine (the operator image carries neither).
"""
