"""
Integration tests of L{fangs.runner}: the real sensor, sandboxes, egress and cgroups.
"""
