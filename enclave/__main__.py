"""``python -m enclave``: start the enclave service (see enclave.main)."""

import sys

from enclave.main import main

sys.exit(main())
