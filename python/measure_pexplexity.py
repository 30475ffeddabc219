"""rwkv.cpp's name for measure_perplexity.py (spelled so in rwkv.cpp): the same script, the same
arguments.

    python python/measure_pexplexity.py C:\\rwkv.cpp-169M.bin C:\\text.txt 1024
"""

import sys

from measure_perplexity import main  # the script beside this one

if __name__ == "__main__":
    sys.exit(main())
