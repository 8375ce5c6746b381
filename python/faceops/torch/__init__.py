"""The PyTorch front of faceops (torch stays optional: nothing else in faceops imports this package)."""
