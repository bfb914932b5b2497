#!/usr/bin/env python
import sys

if __name__ == "__main__":
    from config.environment import choose_settings

    # .env first, then the settings it names; production (secrets required) when none is named.
    choose_settings()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
