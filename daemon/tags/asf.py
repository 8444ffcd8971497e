"""WMA: the ASF file type daemon.tags.write saves a genre through."""

from __future__ import annotations

import mutagen._util
from mutagen.asf import ASF, ASFInfo, ASFTags, ASFUnicodeAttribute
from mutagen.asf import _objects as asf_objects


class PlacedASF(ASF):
    """An ASF file whose attributes go back into the header object they came from.

    mutagen's ASF.save re-sorts attributes by name, which moves a second Author (FFmpeg
    writes one in each description object) into the Metadata Library and an Extended
    Content Description "Description" into the Content Description object, and mediainfo
    then shows neither. Here only WM/Genre moves: its first value where the old one was,
    further values in the Metadata Library (one Extended Content Description entry per
    name). Uses mutagen.asf._objects, the only way to the header objects."""

    PLACES = (asf_objects.ContentDescriptionObject.GUID,
              asf_objects.ExtendedContentDescriptionObject.GUID,
              asf_objects.MetadataObject.GUID, asf_objects.MetadataLibraryObject.GUID)

    @mutagen._util.loadfile()
    def load(self, filething):
        self.info = ASFInfo()
        self.tags = ASFTags()
        self._tags = {}
        self._header = asf_objects.HeaderObject.parse_full(self, filething.fileobj)
        self.places = {guid: self._tags.pop(guid, []) for guid in self.PLACES}
        for guid in self.PLACES:
            self.tags.extend(self.places[guid])

    def set_genre(self, values: list[str], drop_genre_id: bool) -> None:
        ecd, library = self.PLACES[1], self.PLACES[3]
        home = next((g for g in self.PLACES for name, _ in self.places[g]
                     if name == "WM/Genre"), ecd)
        dropped = {"WM/Genre", "WM/GenreID"} if drop_genre_id else {"WM/Genre"}
        first = ASFUnicodeAttribute(values[0])
        for guid in self.PLACES:
            kept, placed = [], False
            for name, value in self.places[guid]:
                if name == "WM/Genre" and guid == home and not placed:
                    kept.append((name, first))  # where the old genre was
                    placed = True
                elif name not in dropped:
                    kept.append((name, value))
            if guid == home and not placed:
                kept.append(("WM/Genre", first))
            self.places[guid] = kept
        self.places[library].extend(("WM/Genre", ASFUnicodeAttribute(v)) for v in values[1:])
        self.tags = ASFTags()
        for guid in self.PLACES:
            self.tags.extend(self.places[guid])

    @mutagen._util.loadfile(writable=True)
    def save(self, filething=None, padding=None):
        cdo, ecd, meta, library = self.PLACES
        self.to_content_description = dict(self.places[cdo])
        self.to_extended_content_description = {}
        self.to_metadata = dict(self.places[meta])
        self.to_metadata_library = list(self.places[library])
        for name, value in self.places[ecd]:
            if name in self.to_extended_content_description:
                self.to_metadata_library.append((name, value))
            else:
                self.to_extended_content_description[name] = value
        header = self._header
        if header.get_child(cdo) is None:
            header.objects.append(asf_objects.ContentDescriptionObject())
        if header.get_child(ecd) is None:
            header.objects.append(asf_objects.ExtendedContentDescriptionObject())
        header_ext = header.get_child(asf_objects.HeaderExtensionObject.GUID)
        if header_ext is None:
            header_ext = asf_objects.HeaderExtensionObject()
            header.objects.append(header_ext)
        if header_ext.get_child(meta) is None:
            header_ext.objects.append(asf_objects.MetadataObject())
        if header_ext.get_child(library) is None:
            header_ext.objects.append(asf_objects.MetadataLibraryObject())
        fileobj = filething.fileobj
        old_size = header.parse_size(fileobj)[0]
        data = header.render_full(self, fileobj, old_size, padding)
        mutagen._util.resize_bytes(fileobj, old_size, len(data), 0)
        fileobj.seek(0)
        fileobj.write(data)
