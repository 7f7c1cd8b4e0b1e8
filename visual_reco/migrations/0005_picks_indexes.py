"""Indexes for "Picked for you": a visitor's (and a logged-in user's) latest events.

Built concurrently: the events table is large and written on every page a shopper sees,
and a plain CREATE INDEX would hold its writes for the whole build.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('visual_reco', '0004_feedback_stats'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='feedbackevent',
            index=models.Index(fields=['visitor', 'occurred_at'], name='visual_reco_event_recent'),
        ),
        AddIndexConcurrently(
            model_name='feedbackevent',
            index=models.Index(condition=models.Q(('user_id', ''), _negated=True), fields=['user_id', 'occurred_at'], name='visual_reco_event_user_recent'),
        ),
    ]
