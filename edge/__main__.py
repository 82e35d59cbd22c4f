from edge.cli import app

app()
