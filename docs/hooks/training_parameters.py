"""MkDocs hook: the docs' table of training parameters is made from their one declaration
(`app.training.params.TrainParams`), where ``<!-- training-parameters -->`` stands."""

MARKER = "<!-- training-parameters -->"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    if MARKER not in markdown:
        return markdown
    from app.training.params import markdown_table

    return markdown.replace(MARKER, markdown_table())
