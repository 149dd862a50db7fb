"""The fine-tuning benchmark (`tans bench`): does the retrieved network win after fine-tuning, on datasets
nothing was trained or tuned on?"""
