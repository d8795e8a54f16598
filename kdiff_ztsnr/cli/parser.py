"""The command line's argparse: unknown options get the sub-command's usage and a "did you mean", a mistyped
sub-command the closest one. Imports nothing heavy."""

import argparse
import difflib
import re
from typing import NoReturn


def did_you_mean(word: str, options) -> str:
    """' (did you mean X?)' for the option closest to `word`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


class Parser(argparse.ArgumentParser):
    """argparse that reports an unknown option with the sub-command's usage and a "did you mean", and a
    mistyped sub-command with the closest one."""

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = getattr(self, 'commands', {})
            sub = commands.get(getattr(parsed, 'command', None), self)
            unknown = next((e for e in extras if e.startswith('-')), extras[0])
            known = [o for a in sub._actions for o in a.option_strings]
            sub.error(f'unrecognized arguments: {" ".join(extras)}'
                      + (did_you_mean(unknown.split('=')[0], known) if unknown.startswith('-') else ''))
        return parsed

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument command: invalid choice: '([^']*)'", message)
        if m and getattr(self, 'commands', None):
            message = f"unknown command '{m.group(1)}'{did_you_mean(m.group(1), self.commands)}; the commands " \
                      f"are: {', '.join(self.commands)}"
        super().error(message)
