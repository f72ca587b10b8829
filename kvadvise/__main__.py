from kvadvise.cli import main

main()
