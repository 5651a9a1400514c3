"""Process entry points: the ``vcf-cds`` command line, the gunicorn server and its warm-up
request. The top layer: it may import everything, nothing imports it."""
