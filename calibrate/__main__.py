from calibrate.cli import app

app()
