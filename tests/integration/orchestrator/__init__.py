"""
Integration tests of L{fangs.orchestrator}: PostgreSQL and the real npm registry.
"""
