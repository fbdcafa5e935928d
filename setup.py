from setuptools import setup

# All metadata lives in setup.cfg; this file lets older tools and
# ``pip install -e . --config-settings editable_mode=compat`` work.
setup()
