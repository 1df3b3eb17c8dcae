# Indexes that cost a write per message and served no lookup (docs/benchmarks.md,
# fourth round). Only the indexes are dropped: Django's own AlterField would drop and
# re-add each foreign key too, which re-checks every row of the table under a lock.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# (index, table, column): the names Django gave them in 0001.
DROPPED = [
    # Every send sets last_activity_at: indexed, no update of the row could be HOT.
    ("messaging_conversation_last_activity_at_a276d931", "messaging_conversation", "last_activity_at"),
    # Each covered by a unique constraint (or index) that starts with the same column.
    ("messaging_membership_conversation_id_36fa1e7e", "messaging_membership", "conversation_id"),
    ("messaging_membership_user_id_7a7ab7d8", "messaging_membership", "user_id"),
    ("messaging_message_conversation_id_3db4d3d1", "messaging_message", "conversation_id"),
    ("messaging_receipt_message_id_35688694", "messaging_receipt", "message_id"),
]


class Migration(migrations.Migration):

    dependencies = [
        ('messaging', '0003_group_fanout'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{index}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{index}" ON "{table}" ("{column}")',
                )
                for index, table, column in DROPPED
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='conversation',
                    name='last_activity_at',
                    field=models.DateTimeField(auto_now_add=True),
                ),
                migrations.AlterField(
                    model_name='membership',
                    name='conversation',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='messaging.conversation'),
                ),
                migrations.AlterField(
                    model_name='membership',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='message',
                    name='conversation',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='messaging.conversation'),
                ),
                migrations.AlterField(
                    model_name='receipt',
                    name='message',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='receipts', to='messaging.message'),
                ),
            ],
        ),
    ]
