"""Claims get a code, a status and a hold; redemptions and their undoing are audited.

Every existing claim gets its code. A release used to delete its claim
(ClaimRelease kept the audit): each past release gets its claim back, with
status "released", so that every claim ever granted is a row again.
"""

import secrets

import coupons.claim_codes

import django.core.validators
import django.db.models.deletion
import django.db.models.functions.text
import django.db.models.lookups
from django.db import migrations, models


# Crockford's base32 (coupons/claim_codes.py), copied: a migration keeps
# working whatever the app's code becomes.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 16
BATCH = 2000


def new_code():
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def give_codes_and_bring_back_released_claims(apps, schema_editor):
    Claim = apps.get_model("coupons", "Claim")
    ClaimRelease = apps.get_model("coupons", "ClaimRelease")
    # Ids first, then updates by batch: SQLite cannot write a table while a
    # cursor still reads it.
    ids = list(Claim.objects.filter(code__isnull=True).values_list("id", flat=True))
    for start in range(0, len(ids), BATCH):
        Claim.objects.bulk_update(
            [Claim(id=claim_id, code=new_code()) for claim_id in ids[start : start + BATCH]], ["code"]
        )
    for release in list(ClaimRelease.objects.filter(claim__isnull=True)):
        claim = Claim.objects.create(
            coupon_id=release.coupon_id,
            user_id=release.user_id,
            code=new_code(),
            status="released",
            returned_at=release.released_at,
        )
        # After create(): auto_now_add stamps created_at with the present.
        Claim.objects.filter(pk=claim.pk).update(created_at=release.claimed_at)
        ClaimRelease.objects.filter(pk=release.pk).update(claim=claim)
    fire_deferred_checks(schema_editor)


def fire_deferred_checks(schema_editor):
    """PostgreSQL checks foreign keys at commit; it refuses the ALTER TABLEs that follow while checks are pending."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def forget_ended_claims(apps, schema_editor):
    """Backwards: released and expired claims go (their units are already back in stock), as releases did."""
    Claim = apps.get_model("coupons", "Claim")
    ClaimRelease = apps.get_model("coupons", "ClaimRelease")
    ClaimRelease.objects.update(claim=None)
    Claim.objects.filter(status__in=["released", "expired"]).delete()
    fire_deferred_checks(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coupons', '0005_user_claims_index'),
    ]

    operations = [
        migrations.CreateModel(
            name='RedemptionUndo',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('order_id', models.CharField(blank=True, max_length=255)),
                ('redeemed_at', models.DateTimeField()),
                ('undone_at', models.DateTimeField(auto_now_add=True)),
                ('undone_by', models.CharField(max_length=255)),
                ('reason', models.CharField(blank=True, max_length=255)),
            ],
            options={
                'verbose_name': 'undone redemption',
                'ordering': ['-undone_at', '-id'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='claim',
            name='claim_one_per_user_per_coupon',
        ),
        migrations.AddField(
            model_name='claim',
            name='code',
            field=models.CharField(editable=False, max_length=16, null=True),
        ),
        migrations.AddField(
            model_name='claim',
            name='expires_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='claim',
            name='order_id',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
        migrations.AddField(
            model_name='claim',
            name='redeemed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='claim',
            name='returned_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='claim',
            name='status',
            field=models.CharField(choices=[('held', 'Held'), ('redeemed', 'Redeemed'), ('released', 'Released'), ('expired', 'Expired')], default='held', max_length=8),
        ),
        migrations.AddField(
            model_name='claimrelease',
            name='claim',
            field=models.OneToOneField(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='release', to='coupons.claim'),
        ),
        migrations.AddField(
            model_name='clientapikey',
            name='scope_redeem',
            field=models.BooleanField(default=False, help_text='/api/redemptions: redeem, undo, read', verbose_name='redeem'),
        ),
        migrations.AddField(
            model_name='coupon',
            name='hold_seconds',
            field=models.IntegerField(blank=True, help_text='Seconds a claim is held for redemption before its unit goes back to stock; empty: for ever.', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(31622400)]),
        ),
        migrations.AddField(
            model_name='coupon',
            name='redeem_until',
            field=models.DateTimeField(blank=True, help_text='Redemptions are refused from this instant on.', null=True),
        ),
        migrations.RunPython(give_codes_and_bring_back_released_claims, forget_ended_claims),
        migrations.AlterField(
            model_name='claim',
            name='code',
            field=models.CharField(default=coupons.claim_codes.new_claim_code, editable=False, max_length=16),
        ),
        migrations.AlterField(
            model_name='claimrelease',
            name='claim',
            field=models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='release', to='coupons.claim'),
        ),
        migrations.AddIndex(
            model_name='claim',
            index=models.Index(fields=['coupon', 'status'], name='claim_coupon_status'),
        ),
        migrations.AddIndex(
            model_name='claim',
            index=models.Index(condition=models.Q(('expires_at__isnull', False), ('status', 'held')), fields=['expires_at', 'coupon'], name='claim_hold_deadlines'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.UniqueConstraint(condition=models.Q(('status__in', ('held', 'redeemed'))), fields=('coupon', 'user_id'), name='claim_one_live_per_user_per_coupon'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.UniqueConstraint(fields=('code',), name='claim_code_unique'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=django.db.models.lookups.Exact(django.db.models.functions.text.Length('code'), 16), name='claim_code_has_its_length'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=models.Q(('status__in', ['held', 'redeemed', 'released', 'expired'])), name='claim_status_known'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('redeemed_at__isnull', False), ('status', 'redeemed')), models.Q(('order_id', ''), ('redeemed_at__isnull', True), ('status__in', ['held', 'expired'])), ('status', 'released'), _connector='OR'), name='claim_redeemed_exactly_when_redeemed'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('returned_at__isnull', False), ('status__in', ('released', 'expired'))), models.Q(('returned_at__isnull', True), ('status__in', ('held', 'redeemed'))), _connector='OR'), name='claim_returned_exactly_when_ended'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'expired'), _negated=True), models.Q(('expires_at__isnull', False), ('returned_at__gte', models.F('expires_at'))), _connector='OR'), name='claim_expires_at_its_deadline'),
        ),
        migrations.AddConstraint(
            model_name='claim',
            constraint=models.CheckConstraint(condition=models.Q(('redeemed_at__isnull', True), ('expires_at__isnull', True), ('redeemed_at__lt', models.F('expires_at')), _connector='OR'), name='claim_redeemed_before_its_deadline'),
        ),
        migrations.AddConstraint(
            model_name='coupon',
            constraint=models.CheckConstraint(condition=models.Q(('hold_seconds__isnull', True), models.Q(('hold_seconds__gte', 1), ('hold_seconds__lte', 31622400)), _connector='OR'), name='coupon_hold_seconds_in_range'),
        ),
        migrations.AddField(
            model_name='redemptionundo',
            name='claim',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='undone_redemptions', to='coupons.claim'),
        ),
    ]
