"""Where models come from: the packaged defaults and the user cache of exported artifacts."""
