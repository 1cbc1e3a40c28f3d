import sys

from jobs_agent.cli import main

sys.exit(main())
