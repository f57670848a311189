"""RESTORE HEADERONLY / FILELISTONLY result sets (SQL Server 2022 columns and types) and the
msdb rows of a backup, all from one backup set header (a dict stored in the backup file)."""

from __future__ import annotations

from .sqltypes import SqlType, parse_type


def _spec(text: str) -> list[tuple[str, SqlType]]:
    out = []
    for part in text.split(";"):
        name, type_text = part.strip().split(" ", 1)
        out.append((name, parse_type(type_text)))
    return out


HEADERONLY = _spec(
    "BackupName nvarchar(128); BackupDescription nvarchar(255); BackupType smallint; "
    "ExpirationDate datetime; Compressed tinyint; Position smallint; DeviceType tinyint; "
    "UserName nvarchar(128); ServerName nvarchar(128); DatabaseName nvarchar(128); "
    "DatabaseVersion int; DatabaseCreationDate datetime; BackupSize numeric(20,0); "
    "FirstLSN numeric(25,0); LastLSN numeric(25,0); CheckpointLSN numeric(25,0); "
    "DatabaseBackupLSN numeric(25,0); BackupStartDate datetime; BackupFinishDate datetime; "
    "SortOrder smallint; CodePage smallint; UnicodeLocaleId int; UnicodeComparisonStyle int; "
    "CompatibilityLevel tinyint; SoftwareVendorId int; SoftwareVersionMajor int; "
    "SoftwareVersionMinor int; SoftwareVersionBuild int; MachineName nvarchar(128); Flags int; "
    "BindingID uniqueidentifier; RecoveryForkID uniqueidentifier; Collation nvarchar(128); "
    "FamilyGUID uniqueidentifier; HasBulkLoggedData bit; IsSnapshot bit; IsReadOnly bit; "
    "IsSingleUser bit; HasBackupChecksums bit; IsDamaged bit; BeginsLogChain bit; "
    "HasIncompleteMetaData bit; IsForceOffline bit; IsCopyOnly bit; "
    "FirstRecoveryForkID uniqueidentifier; ForkPointLSN numeric(25,0); RecoveryModel nvarchar(60); "
    "DifferentialBaseLSN numeric(25,0); DifferentialBaseGUID uniqueidentifier; "
    "BackupTypeDescription nvarchar(60); BackupSetGUID uniqueidentifier; CompressedBackupSize bigint; "
    "Containment tinyint; KeyAlgorithm nvarchar(32); EncryptorThumbprint varbinary(20); "
    "EncryptorType nvarchar(32); LastValidRestoreTime datetime; TimeZone nvarchar(32); "
    "CompressionAlgorithm nvarchar(32)"
)
FILELISTONLY = _spec(
    "LogicalName nvarchar(128); PhysicalName nvarchar(260); Type char(1); FileGroupName nvarchar(128); "
    "Size numeric(20,0); MaxSize numeric(20,0); FileId bigint; CreateLSN numeric(25,0); "
    "DropLSN numeric(25,0); UniqueId uniqueidentifier; ReadOnlyLSN numeric(25,0); "
    "ReadWriteLSN numeric(25,0); BackupSizeInBytes bigint; SourceBlockSize int; FileGroupId int; "
    "LogGroupGUID uniqueidentifier; DifferentialBaseLSN numeric(25,0); "
    "DifferentialBaseGUID uniqueidentifier; IsReadOnly bit; IsPresent bit; TDEThumbprint varbinary(32); "
    "SnapshotUrl nvarchar(360)"
)
LABELONLY = _spec(
    "MediaName nvarchar(128); MediaSetId uniqueidentifier; FamilyCount int; FamilySequenceNumber int; "
    "MediaFamilyId uniqueidentifier; MediaSequenceNumber int; MediaLabelPresent tinyint; "
    "MediaDescription nvarchar(255); SoftwareName nvarchar(128); SoftwareVendorId int; "
    "MediaDate datetime; MirrorCount int; IsCompressed bit"
)
TYPE_CODES = {"D": 1, "L": 2, "I": 5}
TYPE_DESCRIPTIONS = {"D": "Database", "L": "Transaction Log", "I": "Database Differential"}


def headeronly_row(h: dict) -> tuple:
    values = {
        "BackupName": h["name"],
        "BackupDescription": h.get("description"),
        "BackupType": TYPE_CODES[h["type"]],
        "ExpirationDate": None,
        "Compressed": int(h["compressed"]),
        "Position": h["Position"],
        "DeviceType": h["device_type"],
        "UserName": h["user_name"],
        "ServerName": h["server_name"],
        "DatabaseName": h["database_name"],
        "DatabaseVersion": 957,
        "DatabaseCreationDate": h["database_creation_date"],
        "BackupSize": h["backup_size"],
        "FirstLSN": h["first_lsn"],
        "LastLSN": h["last_lsn"],
        "CheckpointLSN": h["checkpoint_lsn"],
        "DatabaseBackupLSN": h["database_backup_lsn"],
        "BackupStartDate": h["backup_start_date"],
        "BackupFinishDate": h["backup_finish_date"],
        "SortOrder": 52,
        "CodePage": 0,
        "UnicodeLocaleId": 1033,
        "UnicodeComparisonStyle": 196609,
        "CompatibilityLevel": 160,
        "SoftwareVendorId": 4608,
        "SoftwareVersionMajor": 16,
        "SoftwareVersionMinor": 0,
        "SoftwareVersionBuild": 1000,
        "MachineName": h["server_name"],
        "Flags": 512
        | (16 if h["has_backup_checksums"] else 0)
        | (1024 if h["is_copy_only"] else 0),
        "BindingID": h["binding_id"],
        "RecoveryForkID": h["last_recovery_fork_guid"],
        "Collation": "SQL_Latin1_General_CP1_CI_AS",
        "FamilyGUID": h["family_guid"],
        "HasBulkLoggedData": False,
        "IsSnapshot": False,
        "IsReadOnly": False,
        "IsSingleUser": h["is_single_user"],
        "HasBackupChecksums": h["has_backup_checksums"],
        "IsDamaged": False,
        "BeginsLogChain": h["begins_log_chain"],
        "HasIncompleteMetaData": False,
        "IsForceOffline": h.get("is_force_offline", False),
        "IsCopyOnly": h["is_copy_only"],
        "FirstRecoveryForkID": h["first_recovery_fork_guid"],
        "ForkPointLSN": h["fork_point_lsn"],
        "RecoveryModel": h["recovery_model"],
        "DifferentialBaseLSN": h["differential_base_lsn"],
        "DifferentialBaseGUID": h["differential_base_guid"],
        "BackupTypeDescription": TYPE_DESCRIPTIONS[h["type"]],
        "BackupSetGUID": h["backup_set_guid"],
        "CompressedBackupSize": h["compressed_backup_size"],
        "Containment": 0,
        "KeyAlgorithm": None,
        "EncryptorThumbprint": None,
        "EncryptorType": None,
        "LastValidRestoreTime": h["backup_finish_date"] if h["type"] == "L" else None,
        "TimeZone": "+00:00",
        "CompressionAlgorithm": "MS_XPRESS" if h["compressed"] else None,
    }
    return tuple(values[name] for name, _ in HEADERONLY)


def filelist_rows(h: dict) -> list[tuple]:
    rows = []
    for f in h["files"]:
        rows.append(
            (
                f["logical_name"],
                f["physical_name"],
                f["type"],
                "PRIMARY" if f["type"] == "D" else None,
                f["size"],
                35184372080640 if f["type"] == "D" else 2199023255552,
                f["file_id"],
                0,
                0,
                f["unique_id"],
                0,
                0,
                f["backup_size"],
                512,
                1 if f["type"] == "D" else 0,
                None,
                h["differential_base_lsn"] if f["type"] == "D" else 0,
                h["differential_base_guid"] if f["type"] == "D" else None,
                False,
                True,
                None,
                None,
            )
        )
    return rows


def msdb_rows(
    h: dict, media_set_id: int, backup_set_id: int, device: str, device_type: int
) -> dict:
    """backupmediaset, backupmediafamily, backupset and backupfile rows of one backup set."""
    bs = {
        "backup_set_id": backup_set_id,
        "backup_set_uuid": h["backup_set_guid"],
        "media_set_id": media_set_id,
        "first_family_number": 1,
        "first_media_number": 1,
        "last_family_number": 1,
        "last_media_number": 1,
        "position": h["Position"],
        "software_vendor_id": 4608,
        "name": h["name"],
        "description": h.get("description"),
        "user_name": h["user_name"],
        "software_major_version": 16,
        "software_minor_version": 0,
        "software_build_version": 1000,
        "time_zone": 0,
        "first_lsn": h["first_lsn"],
        "last_lsn": h["last_lsn"],
        "checkpoint_lsn": h["checkpoint_lsn"],
        "database_backup_lsn": h["database_backup_lsn"],
        "database_creation_date": h["database_creation_date"],
        "backup_start_date": h["backup_start_date"],
        "backup_finish_date": h["backup_finish_date"],
        "type": h["type"],
        "sort_order": 52,
        "code_page": 0,
        "compatibility_level": 160,
        "database_version": 957,
        "backup_size": h["backup_size"],
        "database_name": h["database_name"],
        "server_name": h["server_name"],
        "machine_name": h["server_name"],
        "flags": 512,
        "unicode_locale": 1033,
        "unicode_compare_style": 196609,
        "collation_name": "SQL_Latin1_General_CP1_CI_AS",
        "is_password_protected": 0,
        "recovery_model": h["recovery_model"],
        "has_bulk_logged_data": 0,
        "is_snapshot": 0,
        "is_readonly": 0,
        "is_single_user": int(h["is_single_user"]),
        "has_backup_checksums": int(h["has_backup_checksums"]),
        "is_damaged": 0,
        "begins_log_chain": int(h["begins_log_chain"]),
        "has_incomplete_metadata": 0,
        "is_force_offline": int(h.get("is_force_offline", False)),
        "is_copy_only": int(h["is_copy_only"]),
        "first_recovery_fork_guid": h["first_recovery_fork_guid"],
        "last_recovery_fork_guid": h["last_recovery_fork_guid"],
        "fork_point_lsn": h["fork_point_lsn"],
        "database_guid": h["database_guid"],
        "family_guid": h["family_guid"],
        "differential_base_lsn": h["differential_base_lsn"],
        "differential_base_guid": h["differential_base_guid"],
        "compressed_backup_size": h["compressed_backup_size"],
        "compression_algorithm": "MS_XPRESS" if h["compressed"] else None,
    }
    files = [
        {
            "backup_set_id": backup_set_id,
            "first_family_number": 1,
            "first_media_number": 1,
            "filegroup_name": "PRIMARY" if f["type"] == "D" else None,
            "page_size": 8192,
            "file_number": f["file_id"],
            "backed_up_page_count": f["pages"],
            "file_type": f["type"],
            "source_file_block_size": 512,
            "file_size": f["size"],
            "logical_name": f["logical_name"],
            "physical_drive": f["physical_name"].rsplit("/", 1)[0] + "/",
            "physical_name": f["physical_name"],
            "state": 0,
            "state_desc": "ONLINE",
            "create_lsn": 0,
            "drop_lsn": None,
            "file_guid": f["unique_id"],
            "differential_base_lsn": h["differential_base_lsn"],
            "differential_base_guid": h["differential_base_guid"],
            "backup_size": f["backup_size"],
            "is_readonly": 0,
            "is_present": 1,
        }
        for f in h["files"]
    ]
    return {
        "backupmediaset": [
            {
                "media_set_id": media_set_id,
                "media_uuid": h["media_guid"],
                "media_family_count": 1,
                "software_name": "Microsoft SQL Server",
                "software_vendor_id": 4608,
                "MTF_major_version": 1,
                "mirror_count": 1,
                "is_password_protected": 0,
                "is_compressed": int(h["compressed"]),
                "is_encrypted": 0,
            }
        ],
        "backupmediafamily": [
            {
                "media_set_id": media_set_id,
                "family_sequence_number": 1,
                "media_family_id": h["media_guid"],
                "media_count": 1,
                "physical_device_name": device,
                "device_type": device_type,
                "physical_block_size": 512,
                "mirror": 0,
            }
        ],
        "backupset": [bs],
        "backupfile": files,
    }
