"""Settings package: base (shared), dev (default for manage.py), test (pytest), prod (refuses to start
without its required variables). Choose with DJANGO_SETTINGS_MODULE=coverproject.settings.<name>."""
