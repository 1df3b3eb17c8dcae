# The foreign key's own index on device.user: accounts_device_user_active (user,
# revoked_at) begins with the same column. Only the index is dropped (see
# messaging 0004 for why not Django's AlterField).

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_prekeys'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "accounts_device_user_id_f8e29eb4"',
                    reverse_sql='CREATE INDEX IF NOT EXISTS "accounts_device_user_id_f8e29eb4" ON "accounts_device" ("user_id")',
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='device',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='devices', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
    ]
