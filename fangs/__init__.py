"""
FANGS: npm supply-chain defence.  Every new release of a watched package is
installed in a locked-down sandbox while an eBPF sensor records what the
install does; whatever is new compared with the package's earlier releases
becomes a deviation for a person to review.
"""

__version__ = "0.1.0"
