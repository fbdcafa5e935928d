"""
Integration tests: the real kernel (BCC), root, Docker and the sandbox image,
PostgreSQL, Chromium or the real npm registry (L{tests.prereq} says which
each needs).  C{make integration} runs only these, C{make unit} everything
else; C{make test} runs both.
"""
