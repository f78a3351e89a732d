"""Distillation: a teacher labels texts (`teacher`), filters choose the silver (`silver`), small
students learn it (`students`), and one report puts them side by side (`report`).
"""
