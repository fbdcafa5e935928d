"""
C{python -m fangs.cli}: the C{fangs} command.
"""

from fangs.cli import run

run()
