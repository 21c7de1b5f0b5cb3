"""The command line's subcommands, one module each (see ``numpyllm.__main__``).

Library modules never import from here: this is the top floor of the package.
"""
