from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('visual_reco', '0008_embedder_rollout'),
    ]

    operations = [
        migrations.CreateModel(
            name='PhotoAdapter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('version', models.CharField(max_length=16, unique=True)),
                ('model', models.CharField(max_length=100)),
                ('field', models.CharField(max_length=100)),
                ('fingerprint', models.CharField(max_length=128)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('params', models.JSONField(default=dict)),
                ('photos', models.PositiveIntegerField(default=0)),
                ('held', models.PositiveIntegerField(default=0)),
                ('metrics', models.JSONField(default=dict)),
                ('serving', models.BooleanField(default=False)),
                ('decision', models.CharField(blank=True, default='', max_length=200)),
                ('weights', models.BinaryField()),
            ],
            options={
                'verbose_name': 'photo adapter',
                'constraints': [models.UniqueConstraint(condition=models.Q(('serving', True)), fields=('model', 'field'), name='visual_reco_photo_adapter_one_serving')],
            },
        ),
    ]
