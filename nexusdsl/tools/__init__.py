"""Tools for working with `.nx` files: the formatter (`fmt`), graph pictures (`viz`), the
Pygments lexer (`lexer`), the language server (`lsp`) and terminal highlighting (`highlight`).

None of them is imported by the compiler: they sit beside it and read its public pieces."""
