"""Measuring: a timer with percentiles, backend runners, and the teacher-vs-student report."""
