"""agentsim: the reference agent chat server of chatprobe (netra wire format)."""
import sys

from .cli import main

sys.exit(main())
