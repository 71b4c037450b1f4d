"""`ray job submit -- python jobs/kernel_demo.py`: the kernel demo as a Ray job entry point."""
import sys

from raygram.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
